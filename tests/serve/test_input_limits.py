"""Bad input of issue 9 that once gave a 5xx or was silently accepted."""

from __future__ import annotations

