"""Issue 15's results: the recipe that runs them (recipe.py) and the page that reports them."""
