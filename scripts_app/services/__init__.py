"""Business logic: plain, keyword-only functions that views, the API and tasks all call."""
