from sarf_bundle.cli import main

if __name__ == "__main__":  # the guard lets spawned worker processes (HD-BET's, the skullstrip command's) import this
    main()
