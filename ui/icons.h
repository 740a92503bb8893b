// Icons. The artwork is SVG in resources/icons (and the app icon in resources/desktop). Qt draws
// SVG only with the QtSvg plugin; without it the app icon is painted from the same geometry and
// the action icons fall back to the style's standard icons.
#pragma once

#include <QIcon>

namespace icons {

QIcon app();
QIcon openModel();
QIcon openFolder();
QIcon resetView();
QIcon cancel();

}  // namespace icons
