"""The console scripts: the proxy in the foreground (run), the rules check, the usage report."""
