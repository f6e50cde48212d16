from onix.main import main

main()
