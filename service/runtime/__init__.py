"""What every layer of a running node shares: settings, logging and thread names."""
