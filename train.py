"""Train one model, or sweep many: ``python train.py -m optimizer.lr=1e-2,9.33e-3``. See README.md."""

import hydra
from omegaconf import DictConfig

from sweeplab import errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from sweeplab.training import train  # imported here so --help stays fast

    return errors.run_task(train, cfg)


if __name__ == "__main__":
    main()
