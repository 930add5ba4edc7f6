"""A local emulator of Microsoft Entra ID (client credentials) and Microsoft Graph sendMail.

Start it with `python -m emulator` / `tenantmail emulator`, or from tests with
`emulator.testing.running_emulator()` or the `emulator` fixture of `emulator.pytest_plugin`.
See docs/emulator.md.
"""

from emulator.config import EmulatorConfig

__all__ = ["EmulatorConfig"]
