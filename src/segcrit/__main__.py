from segcrit.cli import main

main()
