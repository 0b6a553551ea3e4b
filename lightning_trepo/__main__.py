from lightning_trepo.cli import main

main()
