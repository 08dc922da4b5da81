def RandomRedDots(num_dots_1=100, num_dots_2=10):
    """Draws random red dots and returns a small table of ids and values (OML's classic example)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    d = {"id": range(1, 10), "val": [x / 100 for x in range(1, 10)]}
    df = pd.DataFrame(data=d)
    fig = plt.figure(1)
    ax = fig.add_subplot(111)
    ax.scatter(range(0, int(num_dots_1)), np.random.rand(int(num_dots_1)), c="r")
    fig.suptitle("Random Red Dots")
    return df
