from mlexec_core.cli.main import main

main()
