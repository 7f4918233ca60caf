"""Train one classifier (or a sweep with -m); see ceexp/train.py and configs/train.yaml.

The command line is checked before torch and Lightning are imported, so ``--help`` and a refused config
answer in about a second (one line, exit code 2, no run folder).
"""
import sys

# Hydra answers these from the configs alone: no training code is needed
_INSPECTING = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc")


def _inspect() -> None:
    import hydra

    from ceexp.validation import CONFIG_DIR

    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")(lambda cfg: None)()


if __name__ == "__main__":
    from ceexp.runs import checked_argv

    sys.argv[1:] = checked_argv(sys.argv[1:])
    if any(a in _INSPECTING or a.startswith(("--cfg=", "--info=")) for a in sys.argv[1:]):
        _inspect()
    else:
        from ceexp.train import main

        main()
