import pandas as pd


def group_count(dat):
    """Oracle's group-apply example: the group's first Species and its row count."""
    return pd.DataFrame({"Species": [dat["Species"].iloc[0]], "COUNT": [len(dat)]})
