from modtrans.cli import run

run()
