# placeholder, replaced by the real ledger
