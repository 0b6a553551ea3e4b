from lightning_trepo.cli.main import main

main()
