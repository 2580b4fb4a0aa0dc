"""Stage 1, settings: the options (the only defaults), the case matrix and each case's prompts."""
