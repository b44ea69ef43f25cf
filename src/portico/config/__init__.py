"""Portico's configuration: the frozen model of a config file and the loader that builds it.

`load_config()` / `parse_config()` give a valid `Config` or raise `ConfigError` listing every
problem with its file, line and key path. Nothing here starts, stops or reconfigures servers.
"""

from portico.config.load import ConfigError, ConfigProblem, load_config, parse_config
from portico.config.schema import (
    POLICY_NAMES,
    Config,
    ForwardedHeaders,
    ListenerConfig,
    ListenerLimits,
    ListenerTimeouts,
    PolicyName,
    PoolConfig,
    PoolKeepalive,
    PoolTimeouts,
    ServerConfig,
)
from portico.config.units import HostPort, parse_address, parse_duration, parse_size

__all__ = [
    "POLICY_NAMES",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ForwardedHeaders",
    "HostPort",
    "ListenerConfig",
    "ListenerLimits",
    "ListenerTimeouts",
    "PolicyName",
    "PoolConfig",
    "PoolKeepalive",
    "PoolTimeouts",
    "ServerConfig",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_size",
]
