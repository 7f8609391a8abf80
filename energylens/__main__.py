from energylens.cli import main

main()
