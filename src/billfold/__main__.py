from billfold.cli import main

main()
