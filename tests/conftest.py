import os
import sys

# The tests import the addon's package straight from the checkout, as `mitmdump -s` does.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "addon"))
# ...and the unit tests share small helpers between their modules.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "unit"))
