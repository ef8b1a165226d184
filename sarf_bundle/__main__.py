from sarf_bundle.cli import main

main()
