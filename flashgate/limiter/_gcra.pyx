# placeholder, replaced by the real limiter
