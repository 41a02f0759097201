"""The one exception the data package raises for problems with the user's data or arguments."""


from ..errors import DataError

__all__ = ["DataError"]
