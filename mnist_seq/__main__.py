from mnist_seq.cli import main

main()
