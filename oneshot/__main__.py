from oneshot.cli import main

main()
