package cnm

// PluginsReady reports whether New set up the controller's plugins
// (registerPlugins). Tests of plugins skip without it, naming the hook.
func PluginsReady(c *Controller) bool { return c.cfg.plugins.state != nil }
