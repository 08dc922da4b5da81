import numpy as np
import pandas as pd
import pytest

from tests.api.test_jobs import published, run_job  # noqa: F401 - the async tests' fixtures
from tests.factories import make_dataset


def iris_like() -> pd.DataFrame:
    """A small IRIS-shaped table: three species, some missing values."""
    rng = np.random.default_rng(7)
    species = np.repeat(["setosa", "versicolor", "virginica"], 7)
    frame = pd.DataFrame(
        {
            "SEPAL_LENGTH": np.round(rng.uniform(4, 8, len(species)), 1),
            "PETAL_WIDTH": np.round(rng.uniform(0.1, 2.5, len(species)), 1),
            "SPECIES": species,
        }
    )
    frame.loc[[3, 10], "PETAL_WIDTH"] = np.nan
    return frame


@pytest.fixture
def iris():
    return iris_like()


@pytest.fixture
def alice_iris(alice, iris):
    return make_dataset(alice, "IRIS", iris)
