def test_seaborn_noinp():
    """Draws a seaborn distribution plot titled "Dist plot" (OML's Example 2; runs in the seaborn environment)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    values = np.random.default_rng().normal(size=500)
    figure, axes = plt.subplots()
    sns.histplot(values, kde=True, stat="density", ax=axes)
    axes.set_title("Dist plot")
    return "hello world"
