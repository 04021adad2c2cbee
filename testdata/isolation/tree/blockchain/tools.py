from tronpy import Tron as T
import os, tronpy.keys as k

tron_client = None
mod = __import__("tronpy")
