from whiten_cli.cli import main

main()
