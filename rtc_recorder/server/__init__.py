"""``rtc-recorder serve``: signaling, control API, recordings and the page."""
