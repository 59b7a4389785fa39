from kala_celery.cli import main

main()
