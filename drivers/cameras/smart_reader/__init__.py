"""Camera driver for smart code readers that decode on the device and send result strings."""
