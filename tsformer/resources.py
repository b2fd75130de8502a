"""Where the package finds its configs and shipped sample data, installed or in a checkout.

The configs (``tsformer/conf``) ship inside the package and Hydra reads them through it
(``pkg://tsformer.conf``), so every command composes from any working directory. The
small samples the default tasks read are package data under ``tsformer/sample_data`` (in
the source checkout a link to ``data/``); configs name them ``${sample:<path>}``. Real
data paths stay the user's to give.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
# The source checkout's root when the package runs from one (tests, benchmarks, data/).
REPO_ROOT = PACKAGE_DIR.parent
CONF_DIR = PACKAGE_DIR / "conf"
CONF_SOURCE = "pkg://tsformer.conf"  # Hydra's config_path: found through the package, from anywhere
SAMPLES_DIR = PACKAGE_DIR / "sample_data"
# The samples the wheel carries (pyproject.toml's package data lists the same folders).
SHIPPED_SAMPLES = ("electricity", "textcls", "tinyshakespeare", "imdb", "hyperpartisan", "pgbooks_excerpt", "asr_sample")


def sample_path(name: str) -> str:
    """The path of a shipped sample file or folder, e.g. ``electricity/df_electricity_sample.csv.gz``.

    Raises:
        ConfigError: the sample is not installed (the speech sample lives only in the
            source checkout's ``data/``).
    """
    path = SAMPLES_DIR / name
    if not path.exists():
        from tsformer.cli import ConfigError

        raise ConfigError(f"{path}: sample {name!r} is not installed with this package (the wheel ships "
                          f"{', '.join(SHIPPED_SAMPLES)}); give the data's path, e.g. data.path=<file> or data.root=<folder>")
    return str(path)


DATA_ENV = "TSFORMER_DATA"


def data_dir(name: str) -> str:
    """Where a corpus the user provides is looked for by default: ``$TSFORMER_DATA/<name>``
    when that variable is set, else ``../shared/data/<name>`` beside the source checkout
    (configs: ``${data_dir:an4_cepstra/an4}``; ``data.root=...`` overrides either). Nothing
    is checked here: the data module says what is missing and where it looked."""
    import os

    base = os.environ.get(DATA_ENV)
    return str(Path(base) / name) if base else str(REPO_ROOT.parent / "shared" / "data" / name)


# ${repo_root:} stays for configs that name data next to a checkout (../shared/...).
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
OmegaConf.register_new_resolver("data_dir", data_dir, replace=True)
OmegaConf.register_new_resolver("sample", sample_path, replace=True)
