from onix.cli.main import main

main()
