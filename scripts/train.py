"""Train one classifier (or a sweep with -m); see ceexp/train.py and configs/train.yaml."""
from ceexp.train import main

if __name__ == "__main__":
    main()
