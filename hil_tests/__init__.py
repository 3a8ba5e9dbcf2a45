"""The HIL bench (pytest hil_tests); a package so its conftest does not shadow tests/conftest.py."""
