from tests._data_fixtures import cifar10_root  # noqa: F401  (session fixture for the data tests)
