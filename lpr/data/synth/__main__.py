from lpr.data.synth.cli import main

main()
