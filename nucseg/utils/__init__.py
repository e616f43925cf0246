from nucseg.utils.config import register_resolvers

register_resolvers()
