from onix.cli import main

main()
