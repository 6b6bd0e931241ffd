"""What the user sees: the sidebar panel, the Strip menu entries, the preferences and the status they share."""
