from oneshot.commands import main

main()
