from kala_celery.ops.cli import main

main()
