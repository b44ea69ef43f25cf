"""Portico: a load balancer and reverse proxy in Python."""

__version__ = "0.1.0"
