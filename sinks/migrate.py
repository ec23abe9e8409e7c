"""Schema migrations of the sink stage (alembic), run as the owner role (``settings.postgres.owner_url``).

The alembic configuration is built here rather than read from an ini file, so migrations work
from an installed package and from any working directory. ``crawlstream stack up`` calls
:func:`upgrade`; by hand: ``python -m sinks.migrate upgrade [revision]`` (or ``downgrade``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

from crawlstream.settings import Settings, load_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    """An alembic Config for ``settings``; env.py reads the Settings from ``attributes``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an object, not as sqlalchemy.url: configparser would choke on '%' in passwords.
    config.attributes["settings"] = settings
    return config


def migration_settings() -> Settings:
    """The Settings of the running migration (for env.py and revision scripts)."""
    from alembic import context  # only importable while alembic runs a migration

    settings = context.config.attributes.get("settings")
    return settings if isinstance(settings, Settings) else load_settings()


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings), revision)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sinks.migrate", description=__doc__)
    parser.add_argument("action", choices=["upgrade", "downgrade", "current"])
    parser.add_argument("revision", nargs="?")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.action == "upgrade":
        upgrade(settings, args.revision or "head")
    elif args.action == "downgrade":
        downgrade(settings, args.revision or "base")
    else:
        command.current(alembic_config(settings), verbose=True)


if __name__ == "__main__":
    main()
