"""`python -m tfpar.launch -n 2 -- python train.py`, the launcher's stable
command name; its code is `tfpar.cluster.launch`."""

from tfpar.cluster.launch import launch, main, run

if __name__ == "__main__":
    run()
