"""Train one model, or sweep many: ``python train.py -m optimizer.lr=1e-2,9.33e-3``. See README.md."""

import hydra
from omegaconf import DictConfig

import sweeplab  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from sweeplab.run import main as run  # imported here so --help stays fast

    return run(cfg)


if __name__ == "__main__":
    main()
