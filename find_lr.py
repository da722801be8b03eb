"""Find the learning rate: ``python find_lr.py`` runs torch-lr-finder's LR range test on the same
model/data/optimizer groups as train.py and prints, as its last line, the sweep to run next, e.g.
``python train.py -m optimizer.lr=1e-2,9.33e-3``. See README.md."""

import hydra
from omegaconf import DictConfig

from sweeplab import errors


@hydra.main(version_base="1.3", config_path="conf", config_name="find_lr")
def main(cfg: DictConfig) -> None:
    from sweeplab.lr_finder import run  # imported here so --help stays fast

    errors.run_task(run, cfg)


if __name__ == "__main__":
    main()
