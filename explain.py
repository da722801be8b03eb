"""Explain a trained run: GradCAM++ on its misclassified test images. ``python explain.py``
picks the best run of the latest sweep; ``run_id=<id>`` a given one. See README.md."""

import hydra
from omegaconf import DictConfig

from sweeplab import errors


@hydra.main(version_base="1.3", config_path="conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    from sweeplab.explain import explain  # imported here so --help stays fast

    errors.run_task(explain, cfg)


if __name__ == "__main__":
    main()
